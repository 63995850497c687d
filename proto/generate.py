"""Regenerate the Python code of the contracts: `python proto/generate.py`.

Writes `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` next to each `.proto` under `proto/utp/v1/`, which
installs as the `utp.v1` package. Never edit the generated files; change the `.proto` and rerun. The
output depends on the exact grpcio-tools version pinned in pyproject.toml (`test` extra), and
tests/test_contracts.py fails when the committed files differ from a fresh run.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted((root / "utp" / "v1").glob("*.proto"))


def generate(out_dir: Path = PROTO_ROOT, root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc over every contract; return the files written."""
    from grpc_tools import protoc  # only needed to generate, never at run time

    files = [str(p.relative_to(root)) for p in proto_files(root)]
    args = [
        "protoc",
        f"--proto_path={root}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(p for p in (out_dir / "utp" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(PROTO_ROOT.parent))
    sys.exit(0)
