"""The kernel-copy path of the block jobs (qcow2 host extents handed over as
``FdRange``, see blockd/drivers/qcow2/bulk.py) and the generic path it falls
back to, against real qemu-storage-daemon: stream, intermediate commit and
active commit over chains with partially written clusters, zero clusters,
compressed clusters, a raw base and different cluster sizes per layer.  Both
daemons run the same script over identical images; afterwards the transcripts
are equal, every image passes ``qemu-img check``, the top still reads as
before and each image's allocation map (without host offsets) is QSD's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.stream_helpers import (
    Step,
    check_clean,
    compare,
    map_of,
    run_both,
    run_tool,
    snapshot_raw,
)

pytestmark = pytest.mark.qemu

# name -> (format, cluster size or None, qemu-io commands) per layer, base first.
Layer = tuple[str, int | None, list[str]]
CHAINS: dict[str, dict[str, Layer]] = {
    # Partial clusters, zero clusters and compressed clusters in both sources.
    "mixed": {
        "base": ("qcow2", None, ["write -P 1 0 4M", "write -c -P 5 4M 1M",
                                 "write -z 5M 1M"]),
        "mid": ("qcow2", None, ["write -P 3 100k 10k", "write -P 4 1M 2M",
                                "write -c -P 6 3M 128k", "write -z 6M 512k",
                                "write -P 7 7200k 96k"]),
        "top": ("qcow2", None, ["write -P 8 2M 64k"]),
    },
    # Cluster sizes differ between every layer.
    "clusters": {
        "base": ("qcow2", 512 * 1024, ["write -P 1 0 6M"]),
        "mid": ("qcow2", 4096, ["write -P 2 1M 1M", "write -P 3 3000k 300k",
                                "write -z 5M 64k"]),
        "top": ("qcow2", 65536, []),
    },
    # A raw base: the generic path where the target or source is raw.
    "raw-base": {
        "base": ("raw", None, ["write -P 1 0 3M", "write -P 2 5M 1M"]),
        "mid": ("qcow2", None, ["write -P 3 512k 2M", "write -z 6M 1M"]),
        "top": ("qcow2", None, []),
    },
}


def _ext(fmt: str) -> str:
    return "img" if fmt == "raw" else "qcow2"


def _setup_for(chain: dict[str, Layer]) -> Any:
    def setup(d: Path) -> None:
        prev: tuple[str, str] | None = None
        for name, (fmt, cluster, writes) in chain.items():
            path = d / f"{name}.{_ext(fmt)}"
            args = ["qemu-img", "create", "-q", "-f", fmt]
            if cluster is not None:
                args += ["-o", f"cluster_size={cluster}"]
            if prev is not None:
                args += ["-b", prev[0], "-F", prev[1]]
            run_tool(*args, str(path), "8M")
            cmds: list[str] = []
            for w in writes:
                cmds += ["-c", w]
            if cmds:
                run_tool("qemu-io", "-f", fmt, *cmds, str(path))
            prev = (path.name, fmt)
        snapshot_raw(d, "top.qcow2", d / "expected.raw")
    return setup


def _add_steps(chain: dict[str, Layer]) -> list[Step]:
    steps: list[Step] = []
    prev: str | None = None
    for name, (fmt, _, _) in chain.items():
        opts: dict[str, Any] = {"driver": fmt, "node-name": name,
                                "file": {"driver": "file", "node-name": f"{name}-file",
                                         "filename": f"$D/{name}.{_ext(fmt)}"}}
        if fmt == "qcow2" and name != "base":
            opts["backing"] = prev
        steps.append(("cmd", "blockdev-add", opts))
        prev = name
    return steps


JOBS: dict[str, list[Step]] = {
    "stream": [
        ("cmd", "block-stream", {"device": "top", "job-id": "j"}),
        ("until_total", "JOB_STATUS_CHANGE", "null", 1),
    ],
    "commit": [
        ("cmd", "block-commit", {"device": "top", "job-id": "j", "top-node": "mid",
                                 "base-node": "base"}),
        ("until_total", "JOB_STATUS_CHANGE", "null", 1),
    ],
    "active-commit": [
        ("cmd", "block-commit", {"device": "top", "job-id": "j", "base-node": "base"}),
        ("until", "BLOCK_JOB_READY"),
        ("cmd", "job-complete", {"id": "j"}),
        ("until_total", "JOB_STATUS_CHANGE", "null", 1),
    ],
}


@pytest.mark.parametrize("job", list(JOBS))
@pytest.mark.parametrize("chain", list(CHAINS))
def test_job_result_matches_qsd(tmp_path: Path, chain: str, job: str) -> None:
    layers = CHAINS[chain]
    script = [*_add_steps(layers), *JOBS[job]]
    res = run_both(tmp_path, script, _setup_for(layers))
    qsd_lines, qsd_dir = res["qsd"]
    our_lines, our_dir = res["blockd"]
    assert our_lines == qsd_lines
    for name, (fmt, _, _) in layers.items():
        file = f"{name}.{_ext(fmt)}"
        for d in (qsd_dir, our_dir):
            if fmt == "qcow2":
                check_clean(d / file)
        if fmt == "qcow2":
            assert map_of(our_dir / file) == map_of(qsd_dir / file), file
        else:
            assert (our_dir / file).read_bytes() == (qsd_dir / file).read_bytes()
    for d in (qsd_dir, our_dir):
        # The guest view of the top never changes; after a commit the base
        # (raw or qcow2) holds what the committed layers showed.
        compare(d / "top.qcow2", d / "expected.raw")
