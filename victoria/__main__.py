import sys

from victoria.cli import main

sys.exit(main())
