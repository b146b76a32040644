"""The SDK's check for the S3 Secret before a Kubernetes submit (issue 18 item 15): refuse
a namespace without it, never block a user who may not read Secrets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from kubemap.backends.kubernetes import discovery
from kubemap.backends.kubernetes.backend import require_s3_secret
from kubemap.errors import ConfigError


@dataclass
class FakeCluster:
    namespace: str
    answer: bool | None
    asked: list[str] = field(default_factory=list)

    def secret_exists(self, name: str) -> bool | None:
        self.asked.append(name)
        return self.answer


CHART = discovery.ClusterDefaults.from_data("kubemap-system", {"s3Secret": "team-s3"})


def test_a_namespace_without_the_charts_secret_is_refused_with_the_command() -> None:
    cluster = FakeCluster("ns1", answer=False)
    with pytest.raises(ConfigError) as info:
        require_s3_secret(cluster, CHART)  # type: ignore[arg-type]
    assert cluster.asked == ["team-s3"]
    assert "kubectl create secret generic team-s3 -n ns1" in str(info.value)
    assert "nothing was submitted" in str(info.value)


@pytest.mark.parametrize("answer", [True, None], ids=["present", "forbidden"])
def test_a_present_or_unreadable_secret_does_not_block(answer: bool | None) -> None:
    cluster = FakeCluster("ns1", answer=answer)
    require_s3_secret(cluster, CHART)  # type: ignore[arg-type]
    assert cluster.asked == ["team-s3"]


def test_without_the_charts_defaults_the_default_name_is_checked() -> None:
    cluster = FakeCluster("ns2", answer=False)
    with pytest.raises(ConfigError, match='Secret "kubemap-s3"'):
        require_s3_secret(cluster, None)  # type: ignore[arg-type]
