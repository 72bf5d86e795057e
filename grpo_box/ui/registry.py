"""A registry of the app's Gradio components, keyed "tab.name" (after LlamaBoard's webui/manager.py).

Tabs register every component they build under a key such as "setup.preset" or
"setup.grpo.learning_rate", so that handlers never pass forty components by position. Gradio
accepts a *set* of components as `inputs` and then calls the handler with one dict
{component: value}; `values()` turns that into {"tab.name": value}, and `updates()` turns a
handler's {"tab.name": value} result back into {component: value}, which Gradio accepts when the
event's `outputs` list those components. The registry also collects "syncers": functions that
re-render one tab from the app state after the whole state changed (a new preset, a loaded
config), so a tab that changes the state does not need to know the other tabs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Syncer = Callable[[Any], dict[str, Any]]  # UIState -> {"tab.name": value or gr.update(...)}


class Registry:
    """Components by "tab.name" key, the reverse lookup, and the state-sync hooks."""

    def __init__(self) -> None:
        self._by_key: dict[str, Any] = {}
        self._key_of: dict[int, str] = {}
        self._syncers: list[tuple[tuple[str, ...], Syncer]] = []
        self.ctx: Any = None  # the app's AppContext (hardware, folders), set before the tabs are built

    # -- components -------------------------------------------------------------------------------
    def add(self, key: str, component: Any) -> Any:
        """Register `component` under `key` ("tab.name"); returns the component for inline use."""
        if "." not in key:
            raise ValueError(f"component key {key!r} must look like 'tab.name'")
        if key in self._by_key:
            raise ValueError(f"component key {key!r} is registered twice")
        self._by_key[key] = component
        self._key_of[id(component)] = key
        return component

    def get(self, key: str) -> Any:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"no component {key!r}; registered: {', '.join(self._by_key)}") from None

    __getitem__ = get

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def keys(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` ("setup" or "setup." match "setup.x"; "" matches all), in order added."""
        if not prefix:
            return list(self._by_key)
        head = prefix if prefix.endswith(".") else prefix + "."
        return [key for key in self._by_key if key.startswith(head)]

    def under(self, prefix: str) -> dict[str, Any]:
        """{key: component} for every key under `prefix`."""
        return {key: self._by_key[key] for key in self.keys(prefix)}

    def key_of(self, component: Any) -> str:
        """The key a component was registered under."""
        try:
            return self._key_of[id(component)]
        except KeyError:
            raise KeyError(f"component {component!r} is not registered") from None

    def components(self, keys: Iterable[str]) -> list[Any]:
        """The components for `keys`, in that order (for an event's `outputs`)."""
        return [self.get(key) for key in keys]

    def inputs(self, *keys_or_prefixes: str) -> set[Any]:
        """A set of components for `inputs=`: exact keys, or every key under a prefix ending in '.'."""
        found: set[Any] = set()
        for item in keys_or_prefixes:
            if item.endswith("."):
                found.update(self.under(item).values())
            else:
                found.add(self.get(item))
        return found

    # -- handler values ---------------------------------------------------------------------------
    def values(self, data: dict[Any, Any]) -> dict[str, Any]:
        """Gradio's {component: value} dict as {"tab.name": value} (unregistered components dropped)."""
        return {self._key_of[id(c)]: v for c, v in data.items() if id(c) in self._key_of}

    def updates(self, by_key: dict[str, Any]) -> dict[Any, Any]:
        """A handler's {"tab.name": value or gr.update(...)} as the {component: ...} dict Gradio takes."""
        return {self.get(key): value for key, value in by_key.items()}

    def keyed(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[Any, Any]], dict[Any, Any]]:
        """Wrap `fn({"tab.name": value}) -> {"tab.name": update}` as a Gradio handler over sets."""

        def handler(data: dict[Any, Any]) -> dict[Any, Any]:
            return self.updates(fn(self.values(data)))

        handler.__name__ = getattr(fn, "__name__", "handler")
        handler.__doc__ = fn.__doc__
        return handler

    # -- state sync -------------------------------------------------------------------------------
    def add_syncer(self, keys: Iterable[str], fn: Syncer) -> None:
        """Register `fn(state) -> {key: update}` to re-render `keys` after the whole state changed."""
        self._syncers.append((tuple(keys), fn))

    def sync_keys(self) -> list[str]:
        return [key for keys, _ in self._syncers for key in keys]

    def sync(self, state: Any) -> dict[str, Any]:
        """Every syncer's updates for `state`, merged."""
        out: dict[str, Any] = {}
        for _, fn in self._syncers:
            out.update(fn(state))
        return out

    def client_keys(self, blocks: Any, api_name: str) -> list[str]:
        """The keys of the values `gradio_client` returns from endpoint `api_name`, in order (it leaves
        out State and layout blocks such as a Column whose visibility the event changes)."""
        import gradio as gr

        fn = next((f for f in blocks.fns.values() if f.api_name == api_name.lstrip("/")), None)
        if fn is None:
            raise KeyError(f"no endpoint {api_name!r}")
        return [self.key_of(c) for c in fn.outputs
                if isinstance(c, gr.components.Component) and not isinstance(c, gr.State)]
