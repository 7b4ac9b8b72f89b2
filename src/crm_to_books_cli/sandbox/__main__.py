import sys

from crm_to_books_cli.sandbox.cli import main

sys.exit(main())
