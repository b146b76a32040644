"""spec.store.url: the CRD (from the models) and the chart's values schema accept and refuse
the same store URLs, and the API-server-side rule names the field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubemap.resources.maptask import STORE_URL_PATTERN, StoreRef
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[2]
URLS = {
    "s3://kubemap/tasks": True,
    "s3://b": True,
    "file:///data/kubemap": True,
    "/data/kubemap": False,
    "gs://bucket/tasks": False,
    "https://s3.example/bucket": False,
    "s3://": False,
    "data": False,
}


def _crd_url_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "maptask.yaml").read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema: dict[str, Any] = root["properties"]["spec"]["properties"]["store"]["properties"]["url"]
    return schema


def _chart_default_store_schema() -> dict[str, Any]:
    schema = json.loads((REPO / "charts" / "kubemap" / "values.schema.json").read_text())
    node: dict[str, Any] = schema["properties"]["s3"]["properties"]["defaultStore"]
    return node


@pytest.mark.parametrize(("url", "servable"), URLS.items())
def test_crd_and_chart_agree_on_store_urls(url: str, servable: bool) -> None:
    crd_pattern = _crd_url_schema()["pattern"]
    chart_pattern = _chart_default_store_schema()["pattern"]
    assert crd_pattern == STORE_URL_PATTERN
    assert bool(re.search(crd_pattern, url)) is servable
    assert bool(re.search(chart_pattern, url)) is servable
    # The chart also allows "" (no default store); the CRD field is required when set.
    assert re.search(chart_pattern, "")


@pytest.mark.parametrize("url", [u for u, ok in URLS.items() if not ok])
def test_the_sdk_model_refuses_what_the_operator_cannot_serve(url: str) -> None:
    with pytest.raises(ValidationError, match="url"):
        StoreRef(url=url)
