import sys

from visprompt.cli import main

sys.exit(main())
