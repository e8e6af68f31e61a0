"""Run a checkpoint's Inference Endpoints handler in a fresh ``python -I`` process that cannot import this project,
as on a machine that has only the checkpoint folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def handler_output_without_project(folder: Path, request_code: str, timeout: float = 300) -> str:
    """The last line printed by ``request_code``, run after ``handler = EndpointHandler(folder)`` is built from
    ``folder/handler.py`` with every module of the project blocked."""
    client = f"""
import importlib.abc, importlib.util, json, sys, base64
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"modeling_muse", "configuration_muse", "processing_muse", "muse_training"}}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("handler", {str(folder / 'handler.py')!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
handler = module.EndpointHandler({str(folder)!r})
{request_code}
"""
    done = subprocess.run(
        [sys.executable, "-I", "-c", client], capture_output=True, text=True, timeout=timeout, cwd=folder.parent
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]
