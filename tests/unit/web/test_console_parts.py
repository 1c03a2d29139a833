"""The console's pure parts: its settings, the chart's geometry, the template filters, names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from collage.errors import ConfigError
from collage.settings import Settings
from collage.web import auth, chart
from collage.web.app import age, number, when
from tests.unit.test_settings import BASE


def test_the_console_listens_on_loopback_port_8080_and_is_read_only_by_default() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.web_host, settings.web_port, settings.web_token) == ("127.0.0.1", 8080, None)


def test_the_console_settings_are_read_and_the_token_stays_out_of_the_repr() -> None:
    token = "a-long-enough-console-token"
    env = {**BASE, "WEB_HOST": "10.1.2.3", "WEB_PORT": "9090", "WEB_TOKEN": token}
    settings = Settings.from_env(env)
    assert (settings.web_host, settings.web_port, settings.web_token) == ("10.1.2.3", 9090, token)
    assert token not in repr(settings)
    assert Settings.from_env({**BASE, "WEB_HOST": "[::1]"}).web_host == "::1"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("WEB_TOKEN", "short", "WEB_TOKEN is invalid: must be at least 16 characters (it is 5)"),
        ("WEB_PORT", "0", "WEB_PORT is invalid: 0 is outside 1..65535"),
        ("WEB_PORT", "http", "WEB_PORT is invalid: expected a whole number"),
        ("WEB_HOST", "http://host/", "WEB_HOST is invalid: expected an address or host name"),
    ],
)
def test_a_bad_console_setting_stops_with_one_line_naming_it(
    name: str, value: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, name: value})
    assert words in str(caught.value)


def hours(*counts: tuple[int, int, int]) -> list[dict[str, object]]:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    return [
        {"hour": start + timedelta(hours=n), "built": b, "errors": e, "retries": r}
        for n, (b, e, r) in enumerate(counts)
    ]


def test_the_chart_stacks_each_hour_and_scales_to_the_busiest() -> None:
    drawn = chart.throughput(hours((100, 0, 0), (50, 25, 25), (0, 0, 0), (1, 0, 0)))
    assert drawn.peak == 100 and drawn.totals == {"built": 151, "errors": 25, "retries": 25}
    busiest, mixed, empty, one = drawn.bars
    assert [s.kind for s in busiest.segments] == ["built"]
    assert busiest.segments[0].height == pytest.approx(drawn.baseline)
    assert busiest.segments[0].y == pytest.approx(0)
    heights = [s.height for s in mixed.segments]
    assert [s.kind for s in mixed.segments] == ["built", "error", "retry"]
    assert sum(heights) == pytest.approx(drawn.baseline)  # as busy as the busiest, stacked
    assert mixed.segments[0].y > mixed.segments[1].y > mixed.segments[2].y  # built at the bottom
    assert empty.segments == ()
    assert one.segments[0].height >= 1  # one event still shows
    assert busiest.label == "00h" and mixed.label is None and one.label == "03h"
    assert busiest.title == "2026-12-01 00:00 UTC: 100 built, 0 errors, 0 retries"
    assert all(bar.x + bar.width <= drawn.width for bar in drawn.bars)


def test_an_idle_day_draws_no_bars_and_no_division_by_zero() -> None:
    drawn = chart.throughput(hours(*[(0, 0, 0)] * 24))
    assert drawn.peak == 0 and all(bar.segments == () for bar in drawn.bars)
    assert chart.throughput([]).bars == ()


def test_the_filters_say_ages_times_and_counts_shortly() -> None:
    assert [age(timedelta(seconds=s)) for s in (-3, 45, 723, 12_000, 200_000)] == [
        "0s",
        "45s",
        "12m 03s",
        "3h 20m",
        "2d 7h",
    ]
    assert age(None) == "-" and when(None) == "-" and number(None) == "-"
    local = datetime(2026, 12, 1, 13, 5, 9, tzinfo=UTC).astimezone()
    assert when(local) == "2026-12-01 13:05:09 UTC"
    assert number(1234567) == "1,234,567" and number("x") == "x"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("ana", "ana"),
        ("  Ana Ruiz ", "Ana Ruiz"),
        ("ops@example.com", "ops@example.com"),
        ("", None),
        ("x" * 41, None),
        ('ana"}\n{"who": "root', None),
        ("<script>", None),
    ],
)
def test_an_operators_name_is_short_and_plain_since_it_goes_into_every_log_line(
    given: str, kept: str | None
) -> None:
    assert auth.valid_name(given) == kept


def test_sessions_are_signed_with_a_key_derived_from_the_token() -> None:
    assert auth.session_secret("token-one-0123456789") == auth.session_secret(
        "token-one-0123456789"
    )
    assert auth.session_secret("token-one-0123456789") != auth.session_secret(
        "token-two-0123456789"
    )
    assert "token-one" not in auth.session_secret("token-one-0123456789")
    assert auth.session_secret(None) != auth.session_secret(None)  # random: nothing to unlock
