"""The shop's data, which both apps read: the legacy Flask shop and its Django port.

In a real shop this is the database both apps share; here it is a list, so that the
example needs no data loaded. Prices are ``Decimal``; each app formats them itself
(and the port does it a little differently: that is the deliberate difference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Item:
    id: int
    name: str
    price: Decimal
    blurb: str


ITEMS: dict[int, Item] = {item.id: item for item in [
    Item(1, "Teapot", Decimal("24.00"), "Stoneware, holds four cups."),
    Item(2, "Kettle", Decimal("39.50"), "Whistles when the water boils."),
    Item(3, "Tea tin", Decimal("8.90"), "Keeps a hundred grams of leaves dry."),
    Item(4, "Espresso machine", Decimal("1299.00"), "Two boilers, for the serious."),
    Item(5, "Cup and saucer", Decimal("12.00"), "White porcelain."),
    Item(6, "Grinder", Decimal("249.00"), "Conical burrs, forty settings."),
]}


@dataclass(frozen=True)
class Line:
    item: Item
    quantity: int

    @property
    def total(self) -> Decimal:
        return self.item.price * self.quantity


def parse_item_id(text: str) -> int | None:
    """The item a form's or a cart's key names, or None: ASCII digits only, and few of them
    (``"²".isdigit()`` is true but ``int("²")`` raises, and ``int()`` refuses 4,301 digits)."""
    if text.isascii() and text.isdigit() and len(text) <= 9 and int(text) in ITEMS:
        return int(text)
    return None


def cart_lines(cart: Mapping[str, int]) -> tuple[list[Line], Decimal]:
    """The lines of a cart (``{"item id": quantity}``, as the legacy session keeps it) and its total."""
    wanted = [(key, quantity) for key, quantity in cart.items()
              if isinstance(key, str) and parse_item_id(key) is not None and isinstance(quantity, int) and quantity > 0]
    lines = [Line(ITEMS[int(key)], quantity) for key, quantity in sorted(wanted, key=lambda kv: int(kv[0]))]
    return lines, sum((line.total for line in lines), Decimal("0"))
