"""The offline page of `dvc plots show` is what the pinned packages give, and
the repo's DVC config uses it."""

import configparser

import pytest

from tlpipe import plots_page

from conftest import REPO


def test_committed_templates_are_what_the_pinned_packages_generate(monkeypatch):
    pytest.importorskip("vl_convert", reason="needs vl-convert-python (pip install -e '.[dev]')")
    monkeypatch.chdir(REPO)
    for path, text in plots_page.generated().items():
        assert path.read_text() == text, f"{path} is stale: run `tlpipe plots-page`"


def test_page_is_dvcs_layout_with_vega_inlined_and_no_cdn():
    page = (REPO / plots_page.TEMPLATE).read_text()
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page  # no CDN script tags
    assert "http" not in page.split("<script>")[0].split("-->")[-1]
    assert "window.vegaEmbed" in page and "BSD" in page and "University of Washington" in page


def test_repo_dvc_config_points_at_the_page():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config["plots"]["html_template"] == plots_page.TEMPLATE.name
    assert (REPO / ".dvc" / config["plots"]["html_template"]).is_file()


def test_confusion_templates_always_show_values():
    import json

    for path in plots_page.CONFUSION_TEMPLATES:
        content = json.loads((REPO / path).read_text())
        assert "params" not in content  # no 'show values' checkbox
        (text,) = [l for l in content["spec"]["layer"] if l.get("mark") == "text"]
        assert "field" in text["encoding"]["text"]
