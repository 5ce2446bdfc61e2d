"""Write the selection note (training.fit.selection_note) into existing cards.

Versions trained before the note existed get the same text a new run writes; any earlier
note (such as the optimizer re-save) is kept after it. model.keras is not touched.

    python scripts/add_selection_notes.py models/digits/1 models/catsdogs/1
"""

from __future__ import annotations

import sys
from pathlib import Path

from modelcard import CARD_FILE, ModelCard
from training.architectures import get_architecture
from training.fit import selection_note

for arg in sys.argv[1:]:
    card_file = Path(arg) / CARD_FILE
    card = ModelCard.model_validate_json(card_file.read_text())
    arch = get_architecture(card.task, card.architecture)
    note = selection_note(arch.name, card.architecture_description, card.validation.accuracy, card.reference)
    if not card.notes.startswith(note):
        card = card.model_copy(update={"notes": f"{note} {card.notes}".strip()})
        card_file.write_text(card.model_dump_json(indent=2) + "\n")
    print(f"{arg}: {card.notes}")
