import sys

from sslbench.cli import main

sys.exit(main())
