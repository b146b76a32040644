"""The operator's watches cannot go silent for ever (kopf #585, kubernetes-client/python#1402).

A watch whose TCP connection died without a FIN or RST (an API server restarted behind a load
balancer, a NAT entry dropped) gets no error and no event: the operator would never see a new
MapTask. Every stream must therefore end on the server side, be cut on the client side a little
later, fail fast when it cannot connect, and be reopened when nothing (not even a bookmark)
arrived for a while.
"""

from __future__ import annotations

import kopf
from kubemap_operator.settings import Settings
from kubemap_operator.tasks.handlers import configure


def configured() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    configure(Settings(), settings)
    return settings


def test_every_watch_stream_is_bounded_on_both_sides() -> None:
    watching = configured().watching
    assert watching.server_timeout is not None and watching.server_timeout > 0
    assert watching.client_timeout is not None
    # The client cut comes after the server's own end of the stream, never before it.
    assert watching.server_timeout < watching.client_timeout <= watching.server_timeout + 120


def test_connecting_and_silence_are_bounded() -> None:
    settings = configured()
    assert settings.watching.connect_timeout is not None and settings.watching.connect_timeout <= 30
    assert settings.networking.connect_timeout is not None
    # Kubernetes sends a bookmark about every minute: silence past that means a dead stream.
    assert 60 < settings.watching.inactivity_timeout <= 120
