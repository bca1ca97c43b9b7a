import sys

from forward3d.cli import main

sys.exit(main())
