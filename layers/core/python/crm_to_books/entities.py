"""The four import kinds as data. Nothing else in the code branches on kind by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["account", "contact", "vendor", "item"]


@dataclass(frozen=True, slots=True)
class Entity:
    kind: Kind
    crm_module: str  # the CRM module the record lives in, for messages
    result_keys: tuple[str, ...]  # keys of Zoho's `data` that carry the Books id, in order
    lookup_path: str  # Books list endpoint that finds an imported record by its CRM id
    lookup_param: str  # query parameter of that endpoint
    lookup_list_key: str  # key of the list in the look-up answer
    lookup_id_key: str  # key of the Books id inside each listed record
    scope: str  # OAuth scope Zoho requires for the import
    sync_mode: str  # the Books CRM sync mode Zoho requires, for error messages

    def import_path(self, crm_id: str) -> str:
        return f"/books/v3/crm/{self.kind}/{crm_id}/import"

    @property
    def books_id_key(self) -> str:
        return self.result_keys[0]

    def books_id(self, data: dict[str, object]) -> str | None:
        """The Books id from Zoho's `data`, as a string (ids overflow JavaScript numbers)."""
        for key in self.result_keys:
            value = data.get(key)
            if value is not None and value != "":
                return str(value)
        return None


_CONTACT_RESULT = ("contact_id", "customer_id")

ENTITIES: dict[str, Entity] = {
    "account": Entity(
        kind="account",
        crm_module="Accounts",
        result_keys=_CONTACT_RESULT,
        lookup_path="/books/v3/contacts",
        lookup_param="zcrm_account_id",
        lookup_list_key="contacts",
        lookup_id_key="contact_id",
        scope="ZohoBooks.contacts.CREATE",
        sync_mode="Accounts and Contacts, or Accounts only",
    ),
    "contact": Entity(
        kind="contact",
        crm_module="Contacts",
        result_keys=_CONTACT_RESULT,
        lookup_path="/books/v3/contacts",
        lookup_param="zcrm_contact_id",
        lookup_list_key="contacts",
        lookup_id_key="contact_id",
        scope="ZohoBooks.contacts.CREATE",
        sync_mode="Contacts only (or Accounts and their Contacts)",
    ),
    "vendor": Entity(
        kind="vendor",
        crm_module="Vendors",
        result_keys=_CONTACT_RESULT,
        lookup_path="/books/v3/contacts",
        lookup_param="zcrm_vendor_id",
        lookup_list_key="contacts",
        lookup_id_key="contact_id",
        scope="ZohoBooks.contacts.CREATE",
        sync_mode="Vendor only",
    ),
    "item": Entity(
        kind="item",
        crm_module="Products",
        result_keys=("item_id",),
        lookup_path="/books/v3/items",
        lookup_param="zcrm_product_id",
        lookup_list_key="items",
        lookup_id_key="item_id",
        scope="ZohoBooks.settings.CREATE",
        sync_mode="Products only",
    ),
}

KINDS: tuple[str, ...] = tuple(ENTITIES)


def get_entity(kind: str) -> Entity:
    """The entity for `kind`; KeyError names the valid kinds."""
    try:
        return ENTITIES[kind]
    except KeyError:
        raise KeyError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}") from None
