"""A DataLoader whose worker errors reach the main process as the error objects, naming their item.

torch re-raises an error of a worker as a new exception of the same class built from the worker's
traceback *text* (``Caught ValueError in DataLoader worker process 0 ...``), so the CLI could only
print ~40 lines or parse them. :class:`ItemLoader` catches the error around each item instead and
hands it over as data (:class:`ItemFailure`, which passes collation); iterating the loader raises
it in the main process: an :class:`~weaktr.errors.InputError` keeps its class and path, any other
error becomes an :class:`~weaktr.errors.ItemError` with the worker's traceback. The same happens
without workers, so the message does not depend on ``num_workers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset, default_collate, default_convert

from weaktr.errors import item_error


@dataclass(frozen=True)
class ItemFailure:
    """What a failed item becomes on its way out of a worker: the error to raise in the main process."""

    error: Exception


def item_name(dataset: Any, index: int) -> str:
    """How errors name item ``index``: the dataset's ``item_name(index)`` if it has one."""
    name = getattr(dataset, "item_name", None)
    return name(index) if callable(name) else f"item {index}"


class _Guarded(Dataset):
    """``dataset[index]``, or an :class:`ItemFailure` naming the item when it raises."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as exc:
            return ItemFailure(item_error(item_name(self.dataset, index), exc))


@dataclass(frozen=True)
class _GuardedCollate:
    """The loader's collate function, except that a batch holding a failure becomes that failure."""

    collate: Callable[[Any], Any]

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, ItemFailure):  # batch_size=None: one item at a time
            return batch
        if isinstance(batch, Sequence):
            failed = next((b for b in batch if isinstance(b, ItemFailure)), None)
            if failed is not None:
                return failed
        return self.collate(batch)


class ItemLoader(DataLoader):
    """``DataLoader(dataset, **kwargs)`` that raises a failed item's own error, naming the item.

    Items are named by ``dataset.item_name(index)`` (weaktr's datasets: ``"image <id>"``).
    """

    def __init__(
        self, dataset: Dataset, collate_fn: Callable[[Any], Any] | None = None, **kwargs: Any
    ) -> None:
        if collate_fn is None:  # DataLoader's own default, which depends on batching
            collate_fn = default_convert if kwargs.get("batch_size", 1) is None else default_collate
        self.source = dataset
        super().__init__(_Guarded(dataset), collate_fn=_GuardedCollate(collate_fn), **kwargs)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, ItemFailure):
                raise batch.error
            yield batch
