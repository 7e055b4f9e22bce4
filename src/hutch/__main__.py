import sys

from hutch.cli.main import main

sys.exit(main())
