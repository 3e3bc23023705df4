"""Sagas (see `event_router._saga` and docs/patterns.md): `step` marks a
saga method, `SagaDefinition.start()` runs the saga class."""

from ._saga import SagaContext, SagaDefinition, SagaState, Step, step

__all__ = ["SagaContext", "SagaDefinition", "SagaState", "Step", "step"]
