"""The local stack: the service's handlers wired the way AWS wires them, on this machine.

See `docs/local.md`. `LocalStack` is the entry point (`crm-to-books dev` runs one).
"""

from crm_to_books_cli.local.runtime import Invocation
from crm_to_books_cli.local.stack import LocalStack
from crm_to_books_cli.local.zoho import ZohoAccount

__all__ = ["Invocation", "LocalStack", "ZohoAccount"]
