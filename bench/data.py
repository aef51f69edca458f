"""Prepare evaluation models and text into the cache (same as `jang data`).

python bench/data.py                 # everything
python bench/data.py smollm2 wiki    # just these
JANG_DATA=/path python bench/data.py # another cache dir
"""

import sys

from jang.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", *sys.argv[1:]]))
