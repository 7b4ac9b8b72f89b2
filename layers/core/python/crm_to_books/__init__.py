"""crm_to_books: import Zoho CRM records into Zoho Books, once each, with a ledger."""

__version__ = "0.1.0"
