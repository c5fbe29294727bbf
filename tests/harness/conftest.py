"""Fixtures of the runner tests: the fake samplers, registered for the test and removed after."""

from __future__ import annotations

import pytest

from tests.harness import fake_sampler


@pytest.fixture
def fake_samplers():
    fake_sampler.register()
    yield fake_sampler.FAKES
    fake_sampler.unregister()
