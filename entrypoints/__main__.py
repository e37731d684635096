import sys

from entrypoints.main import main

sys.exit(main())
