"""The four import kinds as data. Nothing else in the code branches on kind by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["account", "contact", "vendor", "item"]
Match = Literal["match", "other", "unknown"]


@dataclass(frozen=True, slots=True)
class Entity:
    kind: Kind
    crm_module: str  # the Zoho CRM module the record lives in
    result_keys: tuple[str, ...]  # keys of Zoho's `data` that carry the Books id, in order
    books_resource: str  # Books resource: /books/v3/{resource} lists, /{resource}/{id} reads
    books_record_key: str  # key of the one record in a single-record read (`contact`, `item`)
    crm_id_field: str  # the Books field (and list filter) holding the CRM id
    contact_type: str | None  # `contact_type` a matching Books contact has (None: items)
    scope: str  # OAuth scope Zoho requires for the import
    read_scope: str  # OAuth scope the look-up (list and read) requires

    def import_path(self, crm_id: str) -> str:
        return f"/books/v3/crm/{self.kind}/{crm_id}/import"

    @property
    def list_path(self) -> str:
        return f"/books/v3/{self.books_resource}"

    def read_path(self, books_id: str) -> str:
        return f"/books/v3/{self.books_resource}/{books_id}"

    @property
    def books_id_key(self) -> str:
        return self.result_keys[0]

    def books_id(self, data: dict[str, Any]) -> str | None:
        """The Books id from Zoho's `data`, as a string (ids overflow JavaScript numbers)."""
        for key in self.result_keys:
            value = data.get(key)
            if value is not None and value != "":
                return str(value)
        return None

    def match(self, row: Any, crm_id: str) -> Match:
        """Whether a Books record is the one imported from `crm_id`, proven by its own fields:
        `match` (its CRM id field says so and its kind fits), `other` (proven not), `unknown`
        (a field that would prove it is absent: read the single record)."""
        if not isinstance(row, dict):
            return "other"
        if self.contact_type is not None:
            kind = row.get("contact_type")
            if kind is None:
                return "unknown"
            if str(kind) != self.contact_type:
                return "other"
        if self.crm_id_field not in row or row[self.crm_id_field] is None:
            return "unknown"
        value = str(row[self.crm_id_field]).strip()
        return "match" if value.isdigit() and value.lstrip("0") == crm_id.lstrip("0") else "other"


_CONTACT_RESULT = ("contact_id", "customer_id")


def _contacts(kind: Kind, crm_module: str, field: str, contact_type: str) -> Entity:
    return Entity(
        kind=kind,
        crm_module=crm_module,
        result_keys=_CONTACT_RESULT,
        books_resource="contacts",
        books_record_key="contact",
        crm_id_field=field,
        contact_type=contact_type,
        scope="ZohoBooks.contacts.CREATE",
        read_scope="ZohoBooks.contacts.READ",
    )


ENTITIES: dict[str, Entity] = {
    "account": _contacts("account", "Accounts", "zcrm_account_id", "customer"),
    "contact": _contacts("contact", "Contacts", "zcrm_contact_id", "customer"),
    "vendor": _contacts("vendor", "Vendors", "zcrm_vendor_id", "vendor"),
    "item": Entity(
        kind="item",
        crm_module="Products",
        result_keys=("item_id",),
        books_resource="items",
        books_record_key="item",
        crm_id_field="zcrm_product_id",
        contact_type=None,
        scope="ZohoBooks.settings.CREATE",
        read_scope="ZohoBooks.settings.READ",
    ),
}

KINDS: tuple[str, ...] = tuple(ENTITIES)


def get_entity(kind: str) -> Entity:
    """The entity for `kind`; KeyError names the valid kinds."""
    try:
        return ENTITIES[kind]
    except KeyError:
        raise KeyError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}") from None


def kinds_needing(scope: str) -> list[str]:
    """The kinds whose import or look-up needs `scope`."""
    return [k for k, e in ENTITIES.items() if scope in (e.scope, e.read_scope)]
