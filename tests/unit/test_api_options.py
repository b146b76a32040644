"""Options of map/submit: validation into RunOptions, errors that name the option; task names."""

from __future__ import annotations

import re
from typing import Any

import pytest
from kubemap.api.prepare import slugify, task_name
from kubemap.errors import ConfigError
from kubemap.resources.options import RunOptions, validate_options

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, RunOptions()),
        ({"parallelism": 4, "retries": 2}, RunOptions(parallelism=4, retries=2)),
        (
            {"backend": "kubernetes", "image": "img:1"},
            RunOptions(backend="kubernetes", image="img:1"),
        ),
        (
            {"min_success_ratio": 0.5, "timeout": 1.5},
            RunOptions(min_success_ratio=0.5, timeout=1.5),
        ),
        (
            {"items_per_pod": 10, "name": "my-task-1"},
            RunOptions(items_per_pod=10, name="my-task-1"),
        ),
    ],
)
def test_valid_options(options: dict[str, Any], expected: RunOptions) -> None:
    assert validate_options(options) == expected


@pytest.mark.parametrize(
    ("options", "must_mention"),
    [
        ({"parallelism": 0}, ["parallelism=0", ">= 1"]),
        ({"retries": -1}, ["retries=-1", ">= 0"]),
        ({"min_success_ratio": 1.5}, ["min_success_ratio=1.5", "<= 1"]),
        ({"timeout": 0}, ["timeout=0", "> 0"]),
        ({"backend": "kube"}, ["backend='kube'", "'local'", "'kubernetes'"]),
        ({"name": "Bad_Name"}, ["name='Bad_Name'", "DNS-1123"]),
        ({"paralellism": 2}, ["'paralellism'", "did you mean 'parallelism'"]),
        ({"colour": "red"}, ["'colour'", "options are"]),
    ],
)
def test_invalid_options_name_the_option(options: dict[str, Any], must_mention: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_options(options)
    for text in must_mention:
        assert text in str(info.value)


@pytest.mark.parametrize(
    ("raw", "slug"),
    [
        ("square", "square"),
        ("My_Func", "my-func"),
        ("__x__", "x"),
        ("<lambda>", "lambda"),
        ("é", ""),
    ],
)
def test_slugify(raw: str, slug: str) -> None:
    assert slugify(raw) == slug


def named(name: str) -> Any:
    def fn(x: Any) -> Any:
        return x

    fn.__name__ = name
    return fn


@pytest.mark.parametrize(
    ("fn", "prefix"),
    [
        (named("square"), "square-"),
        (lambda x: x, "lambda-"),
        (named("é"), "map-"),
        (named("a" * 80), "a" * 31 + "-"),
        (named("ab_" * 20), None),
        (len, "len-"),
    ],
)
def test_task_names_are_dns_labels(fn: Any, prefix: str | None) -> None:
    name = task_name(fn)
    assert len(name) <= 40
    assert NAME_RE.match(name), name
    assert re.search(r"-[0-9a-f]{8}$", name)
    if prefix is not None:
        assert name.startswith(prefix)
    assert task_name(fn) != name  # random suffix


CLUSTER_ONLY = {
    "pool": "big",
    "image": "img:1",
    "namespace": "team-a",
    "resources": {"limits": {"cpu": "1"}},
    "env": {"A": "1"},
    "node_selector": {"gpu": "yes"},
    "tolerations": [{"key": "gpu", "operator": "Exists"}],
    "service_account": "sa",
    "store_endpoint": "http://minio:9000",
}


@pytest.mark.parametrize(("key", "value"), CLUSTER_ONLY.items())
def test_kubernetes_options_are_refused_on_the_local_backend(key: str, value: Any) -> None:
    # issue 18, item 11: they were silently ignored; the user believed their pool ran it
    for options in ({key: value}, {key: value, "backend": "local"}):
        with pytest.raises(ConfigError) as info:
            validate_options(options)
        message = str(info.value)
        assert message.startswith(f"{key}={value!r}") and 'backend="kubernetes"' in message
    assert getattr(validate_options({key: value, "backend": "kubernetes"}), key) == value


def test_the_refusal_names_each_option_once() -> None:
    with pytest.raises(ConfigError) as info:
        validate_options(CLUSTER_ONLY)
    message = str(info.value)
    assert all(message.count(f"{key}=") == 1 for key in CLUSTER_ONLY)
    assert "options='<missing>'" not in message and "Value error" not in message
