"""A local stand-in for Zoho Accounts, Zoho Books and Zoho CRM, written from Zoho's public docs.

    from crm_to_books_cli.sandbox import ZohoSandbox, SandboxConfig

    with ZohoSandbox(port=0, config=SandboxConfig(reimport="duplicate")) as sb:
        ...  # sb.url is both the accounts server and the api_domain; sb.crm the CRM's controls

See docs/sandbox.md for every behaviour, the control API and the fault knobs.
"""

from crm_to_books_cli.sandbox.config import Faults, Organization, SandboxConfig
from crm_to_books_cli.sandbox.crm_config import CrmFaults, CrmSettings
from crm_to_books_cli.sandbox.server import ZohoSandbox
from crm_to_books_cli.sandbox.state import ManualClock

__all__ = [
    "CrmFaults",
    "CrmSettings",
    "Faults",
    "ManualClock",
    "Organization",
    "SandboxConfig",
    "ZohoSandbox",
]
