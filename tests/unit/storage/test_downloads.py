"""Which failure a SKU's downloads report: the one that ended them, not one it caused."""

from __future__ import annotations

from collage.errors import OriginalMissing, TooLarge
from collage.storage import downloads
from collage.storage.budget import Abandoned


def test_the_download_over_budget_is_reported_not_the_ones_it_stopped() -> None:
    # The threads race: the one the budget stopped can end before the one that went over it.
    over = TooLarge("the photos add up to over 10,000,000 bytes")
    group = BaseExceptionGroup("downloads", [Abandoned("stopped"), over])
    assert downloads._first(group) is over


def test_nested_groups_and_a_lone_abandoned_download() -> None:
    missing = OriginalMissing("originals/gone.jpg does not exist")
    nested = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [Abandoned("x"), missing])])
    assert downloads._first(nested) is missing
    alone = Abandoned("stopped")
    assert downloads._first(BaseExceptionGroup("downloads", [alone])) is alone
