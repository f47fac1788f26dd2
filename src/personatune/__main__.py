import sys

from personatune.cli import main

sys.exit(main())
