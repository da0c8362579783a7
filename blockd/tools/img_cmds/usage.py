"""``qemu-img --help`` / ``-h``: the usage text, listing what blockd-img implements."""

from __future__ import annotations

from blockd.tools.img_cmds.common import Console, ImgExit

VERSION = (
    "qemu-img version 7.2.22 (blockd)\n"
    "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
)

# Syntax lines of the implemented subcommands (qemu-img-cmds.hx, restricted to the
# options blockd-img accepts).
SYNTAX = (
    "  check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename\n"
    "  compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2\n"
    "  convert [-U] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]"
    " [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size]"
    " filename [filename2 [...]] output_filename\n"
    "  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options]"
    " filename [size]\n"
    "  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n"
    "  map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename\n"
    "  rebase [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file"
    " [-F backing_fmt] filename\n"
    "  resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size\n"
)

PARAMS = """
Command parameters:
  'filename' is a disk image filename
  'fmt' is the disk image format. It is guessed automatically in most cases
  'cache' is the cache mode used to write the output disk image, the valid
    options are: 'none', 'writeback' (default, except for convert), 'writethrough',
    'directsync' and 'unsafe' (default for convert)
  'src_cache' is the cache mode used to read input disk images, the valid
    options are the same as for the 'cache' option
  'size' is the disk image size in bytes. Optional suffixes
    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),
    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are
    supported. 'b' is ignored.
  'output_filename' is the destination disk image filename
  'output_fmt' is the destination format
  'options' is a comma separated list of format specific options in a
    name=value format. Use -o help for an overview of the options supported by
    the used format
  '-c' indicates that target image must be compressed (qcow format only)
  '-u' allows unsafe backing chains. For rebasing, it is assumed that old and
       new backing file match exactly. The image doesn't need a working
       backing file before rebasing in this case (useful for renaming the
       backing file). For image creation, allow creating without attempting
       to open the backing file.
  '-h' with or without a command shows this help and lists the supported formats
  '-p' show progress of command (only certain commands)
  '-q' use Quiet mode - do not print any output (except errors)
  '-S' indicates the consecutive number of bytes (defaults to 4k) that must
       contain only zeros for qemu-img to create a sparse image during
       conversion. If the number of bytes is 0, the source will not be scanned for
       unallocated or zero sectors, and the destination image will always be
       fully allocated
  '--output' takes the format in which the output must be done (human or json)
  '-n' skips the target volume creation (useful if the volume is created
       prior to running qemu-img)

Parameters to check subcommand:
  '-r' tries to repair any inconsistencies that are found during the check.
       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all
       kinds of errors, with a higher risk of choosing the wrong fix or
       hiding corruption that has already occurred.

Parameters to compare subcommand:
  '-f' first image format
  '-F' second image format
  '-s' run in Strict mode - fail on different image size or sector allocation
"""


def help_text() -> str:
    from blockd.drivers.base import registered_drivers

    return (
        VERSION
        + "usage: qemu-img [standard options] command [command options]\n"
        + "QEMU disk image utility\n\n"
        + "    '-h', '--help'       display this help and exit\n"
        + "    '-V', '--version'    output version information and exit\n\n"
        + "Command syntax:\n"
        + SYNTAX
        + PARAMS
        + "\nSupported formats: "
        + " ".join(registered_drivers())
        + "\n"
    )


def show_help(con: Console) -> ImgExit:
    """help(): the usage text on stdout, exit status 0.  Raise the result."""
    con.print(help_text())
    return ImgExit(0)
