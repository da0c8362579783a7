"""Collect the iotests (executables named by number, e.g. ``245``) for pytest.

Each unittest method of an iotest becomes one pytest item, run in this process
against a fresh VM exactly as ``check`` would run it; one more item per test
(``<test>::output``) compares what the methods logged plus unittest's summary
with the ``.out`` reference, as ``check`` does.  The image format is the first
one the test's ``iotests.main(supported_fmts=...)`` names (or ``IMGFMT``).

Methods that need blockd features still being built are marked
``xfail(strict=True)`` in ``XFAIL`` below: they run, fail for the reason given,
and turn into errors as soon as they pass, so the mark has to be removed.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
import types
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import iotests  # noqa: E402  (needs HERE on sys.path)

# Per VM kind: test -> method ("method" or "Class.method") -> why it fails
# today.  The output item of a test fails whenever one of its methods does, so
# it is listed too.
XFAIL: dict[str, dict[str, dict[str, str]]] = {
    "blockd": {},
    "qemu": {},
}


def _main_kwargs(path: Path) -> dict[str, Any]:
    """The literal keyword arguments of the test's ``iotests.main(...)`` call."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "main" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "iotests":
            out: dict[str, Any] = {}
            for kw in node.keywords:
                if kw.arg:
                    try:
                        out[kw.arg] = ast.literal_eval(kw.value)
                    except ValueError:
                        pass
            return out
    return {}


def _activates_logging(path: Path) -> bool:
    """Whether the test calls ``iotests.activate_logging()`` (as 245's main block does).

    Only then does QEMU's harness print ``log()`` output (e.g. ``run_job``'s
    event transcript) into what ``check`` compares with the ``.out`` file.
    """
    tree = ast.parse(path.read_text(), str(path))
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "activate_logging"
               and isinstance(node.func.value, ast.Name) and node.func.value.id == "iotests"
               for node in ast.walk(tree))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.parent == HERE and re.fullmatch(r"\d+", file_path.name):
        return IotestFile.from_parent(parent, path=file_path)
    return None


class IotestFailure(Exception):
    """A unittest failure or error, with unittest's own traceback text."""


def _variants() -> list[str]:
    """VM kinds to run: both, unless ``IOTESTS_VM`` picks one."""
    chosen = os.environ.get("IOTESTS_VM")
    return [chosen] if chosen else ["blockd", "qemu"]


class Variant:
    """One way of running a test: the VM kind with its tools, and what it produced."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.logs: dict[str, str] = {}
        self.outcomes: dict[str, str] = {}
        if kind == "qemu":
            # The reference run: real QEMU as the VM and as the image tools.
            self.img = os.environ.get("IOTESTS_QEMU_IMG") or "qemu-img"
            self.io = os.environ.get("IOTESTS_QEMU_IO") or "qemu-io"
        else:
            self.img, self.io = iotests.qemu_img_prog, iotests.qemu_io_prog

    def require(self) -> None:
        """Real QEMU binaries must exist: skip locally, fail in CI (as tests/conftest.py)."""
        if self.kind != "qemu":
            return
        for tool in (iotests.qemu_prog, self.img, self.io):
            if shutil.which(tool) is None:
                if os.environ.get("CI") == "true":
                    pytest.fail(f"{tool} is required in CI")
                pytest.skip(f"{tool} not installed")


class IotestFile(pytest.File):
    """One iotest: its unittest methods plus the output comparison, per VM kind."""

    module: types.ModuleType | None = None

    def setup_config(self) -> None:
        kwargs = _main_kwargs(self.path)
        fmts = list(kwargs.get("supported_fmts") or [])
        fmt = os.environ.get("IMGFMT") or (fmts[0] if fmts and fmts[0] != "generic"
                                           else "raw")
        self.imgfmt = fmt
        self.test_dir = tempfile.mkdtemp(prefix=f"iotest-{self.path.name}-")
        self.notrun: str | None = None
        self.logging_active = _activates_logging(self.path)
        if fmts and "generic" not in fmts and fmt not in fmts:
            self.notrun = f"not suitable for this image format: {fmt}"
        protos = list(kwargs.get("supported_protocols") or [])
        if protos and "generic" not in protos and iotests.imgproto not in protos:
            self.notrun = f"not suitable for this protocol: {iotests.imgproto}"

    def apply_config(self, variant: Variant | None = None) -> None:
        """Point the shared iotests module at this test's format, scratch dir and VM."""
        iotests.imgfmt = self.imgfmt
        iotests.test_dir = self.test_dir
        iotests.output_dir = self.test_dir
        iotests.seq = self.path.name
        if variant is not None:
            iotests.vm_kind = variant.kind
            iotests.qemu_img_prog, iotests.qemu_io_prog = variant.img, variant.io
            iotests.qemu_img_args[0] = variant.img
            iotests.qemu_io_args_no_fmt[0] = variant.io

    def _load(self, kind: str) -> list[tuple[type[unittest.TestCase], str]]:
        """Execute the test file as a fresh module; its test classes in unittest's order.

        Each VM kind gets its own module, as each ``check`` run is its own
        process: class attributes a test mutates (030's ``TestQuorum.children``
        list) must not carry over from one variant to the other.
        """
        loader = importlib.machinery.SourceFileLoader(f"iotest_{self.path.name}_{kind}",
                                                      str(self.path))
        spec = importlib.util.spec_from_loader(loader.name, loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        self.module = module
        tl = unittest.TestLoader()
        order: list[tuple[type[unittest.TestCase], str]] = []
        for name in dir(module):  # unittest.main's order: classes, then methods, by name
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, unittest.TestCase) \
                    and obj.__module__ == module.__name__:
                order += [(obj, m) for m in tl.getTestCaseNames(obj)]
        return order

    def collect(self) -> Iterator[pytest.Item]:
        self.setup_config()
        self.apply_config()
        has_out = (self.path.parent / f"{self.path.name}.out").exists()
        for kind in _variants():
            variant = Variant(kind)
            self.order = self._load(kind)
            xfails = XFAIL.get(kind, {}).get(self.path.name, {})
            marks = [pytest.mark.qemu] if kind == "qemu" else []
            for cls, method in self.order:
                item = IotestCase.from_parent(self, name=f"{cls.__name__}.{method}[{kind}]",
                                              case_class=cls, method=method, variant=variant)
                for mark in marks:
                    item.add_marker(mark)
                # "Class.method" (for names several classes share) or "method"
                reason = xfails.get(f"{cls.__name__}.{method}", xfails.get(method))
                if reason is not None:
                    item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
                yield item
            if has_out:
                out = IotestOutput.from_parent(self, name=f"output[{kind}]", variant=variant)
                for mark in marks:
                    out.add_marker(mark)
                if "output" in xfails:
                    out.add_marker(pytest.mark.xfail(strict=True, reason=xfails["output"]))
                yield out

    def teardown(self) -> None:
        shutil.rmtree(self.test_dir, ignore_errors=True)


class IotestCase(pytest.Item):
    """One unittest method of an iotest, run with a fresh TestCase instance."""

    def __init__(self, *, case_class: type[unittest.TestCase], method: str,
                 variant: Variant, **kw: Any) -> None:
        super().__init__(**kw)
        self.case_class, self.method, self.variant = case_class, method, variant

    def runtest(self) -> None:
        parent = self.parent
        assert isinstance(parent, IotestFile)
        if parent.notrun:
            pytest.skip(parent.notrun)
        self.variant.require()
        parent.apply_config(self.variant)
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = iotests.test_logger
        saved = (logger.handlers[:], logger.level, logger.propagate)
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
        result = unittest.TestResult()
        try:
            self.case_class(self.method).run(result)
        finally:
            logger.handlers, logger.level, logger.propagate = saved
            # without activate_logging(), QEMU's log() output goes nowhere
            self.variant.logs[self.method] = buf.getvalue() if parent.logging_active else ""
        if buf.getvalue():
            sys.stdout.write(buf.getvalue())
        problems = result.errors + result.failures
        self.variant.outcomes[self.method] = (
            "E" if result.errors else "F" if result.failures else
            "s" if result.skipped else ".")
        if problems:
            raise IotestFailure("\n".join(text for _, text in problems))
        if result.skipped:
            pytest.skip(result.skipped[0][1])

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, IotestFailure):
            return str(excinfo.value)
        return "".join(traceback.format_exception(excinfo.value))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: {self.name}"


class IotestOutput(pytest.Item):
    """The test's whole output (log lines, then unittest's summary) against ``.out``."""

    def __init__(self, *, variant: Variant, **kw: Any) -> None:
        super().__init__(**kw)
        self.variant = variant

    def runtest(self) -> None:
        parent = self.parent
        assert isinstance(parent, IotestFile)
        if parent.notrun:
            pytest.skip(parent.notrun)
        self.variant.require()
        names = [m for _, m in parent.order]
        outcomes, logs = self.variant.outcomes, self.variant.logs
        missing = [m for m in names if m not in outcomes]
        if missing:
            pytest.skip(f"not every method ran in this session (e.g. {missing[0]})")
        dots = "".join("." if outcomes[m] == "s" else outcomes[m] for m in names)
        failures = dots.count("F")
        errors = dots.count("E")
        if failures or errors:
            parts = [f"failures={failures}"] if failures else []
            parts += [f"errors={errors}"] if errors else []
            verdict = f"FAILED ({', '.join(parts)})"
        else:
            verdict = "OK"
        output = "".join(logs[m] for m in names) + \
            f"{dots}\n{'-' * 70}\nRan {len(names)} tests\n\n{verdict}\n"
        expected = (parent.path.parent / f"{parent.path.name}.out").read_text()
        assert output == expected

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: {self.name}"
