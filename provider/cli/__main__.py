"""`python3 -m provider.cli`: the shadowlun command, its exit status main's."""
import sys

from provider.cli import main

sys.exit(main())
