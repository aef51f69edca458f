"""Print the directory holding MLXConfig.cmake for the running interpreter.

Runs without importing mlx.core (an isolated build must not pick up another
environment's MLX, and importing the runtime can fail where headers exist).
Exits non-zero with a message when MLX is missing or not the pinned version.
"""

import importlib.metadata
import importlib.util
import pathlib
import sys

REQUIRED = sys.argv[1] if len(sys.argv) > 1 else None


def main() -> int:
    spec = importlib.util.find_spec("mlx")
    if spec is None or not spec.submodule_search_locations:
        print(f"mlx is not installed for {sys.executable}", file=sys.stderr)
        return 1
    try:
        version = importlib.metadata.version("mlx")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if REQUIRED and version != REQUIRED:
        print(
            f"jang must be built against mlx=={REQUIRED} (its C++ headers change "
            f"between patch releases); {sys.executable} has mlx {version}",
            file=sys.stderr,
        )
        return 1
    for location in spec.submodule_search_locations:
        cmake_dir = pathlib.Path(location) / "share" / "cmake" / "MLX"
        if (cmake_dir / "MLXConfig.cmake").is_file():
            print(cmake_dir.as_posix())
            return 0
    print(
        f"mlx {version} at {list(spec.submodule_search_locations)} has no C++ "
        "headers/CMake config; on Linux install the backend wheel: "
        "pip install 'mlx[cpu]==0.32.4'",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
