"""Which failure a SKU's downloads report: the one that ended them, not one it caused."""

from __future__ import annotations

import pytest

from collage.errors import OriginalMissing, TooLarge
from collage.storage import downloads
from collage.storage.budget import Abandoned, ByteBudget


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


def test_downloads_stopped_by_the_bytes_going_over_say_so_themselves() -> None:
    # The task group keeps only the first failure to reach it: a download the budget stopped
    # may get there before the one that went over, whose error is then never seen.
    budget = ByteBudget(10, deadline_s=None)
    with pytest.raises(TooLarge, match="add up to over 10 bytes"):
        budget.take(11)
    assert budget.stopped
    with pytest.raises(TooLarge, match="add up to over 10 bytes"):
        budget.take(1)  # another download's next chunk
    assert isinstance(budget.why_stopped(), TooLarge)
    stopped = ByteBudget(10, deadline_s=None)
    stopped.close()  # the build gave up for another reason
    assert isinstance(stopped.why_stopped(), Abandoned)
