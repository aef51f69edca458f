import sys

from jang.cli import main

sys.exit(main())
