"""docs/models.md lists every registered model with its card's numbers (the page cannot drift)."""

import pathlib
import re

import cnnkit
from cnnkit.models.registry import model_card

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "models.md"
ROW = re.compile(r"^\| `(\w+)` \| ([\d,]+) \| ([\d.]+ [MG]) \| (\d+)x(\d+)x(\d+) \|", re.M)


def _macs(m: int) -> str:
    return f"{m / 1e6:.1f} M" if m < 1e9 else f"{m / 1e9:.2f} G"


def test_every_model_is_in_the_table_with_its_card_numbers():
    rows = {m.group(1): m for m in ROW.finditer(DOC.read_text())}
    assert sorted(rows) == sorted(cnnkit.list_models(task="classification"))
    for name, row in rows.items():
        card = model_card(name)
        assert int(row.group(2).replace(",", "")) == card.params, name
        assert row.group(3) == _macs(card.macs), name
        assert tuple(int(row.group(i)) for i in (4, 5, 6)) == card.input_size, name
