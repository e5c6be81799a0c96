"""Content understanding: text embeddings of catalog items and the candidates built on them.

- ``encoder``: ``TextEncoder`` (ONNX sentence embeddings) and ``load_default_encoder``;
- ``index``: nearest-neighbour search (exact numpy, HNSW via usearch, automatic switch);
- ``catalog``: ``CatalogIngestor``, ``items`` events into vectors, metadata and the index;
- ``sources``: ``ContentSource``, the ``content`` candidate source and user text taste;
  ``NewItemsSource`` (``new_items``), a few never-touched items close in text to the
  session, riding on the content source's index.

Wiring, with nothing global::

    encoder = load_default_encoder(settings.model_path)   # None: no model installed, log says so
    index = AutoIndex(encoder.dim) if encoder else None
    catalog = CatalogIngestor(store, keys, encoder, index)
    await catalog.rebuild()                                # on start-up, from the store
    recommender.on_items.append(catalog.offer)             # Item events -> batched embedding
    content = ContentSource(store, keys, index)            # a CandidateSource, name "content"
    Recommender(store, keys, sources=[..., content, ..., popularity])
    await catalog.close()                                  # on shutdown
"""

from models.content.catalog import CatalogIngestor, item_text
from models.content.encoder import EncoderUnavailable, TextEncoder, load_default_encoder
from models.content.index import AnnIndex, AutoIndex, ExactIndex, VectorIndex
from models.content.sources import ContentSource, NewItemsSource



def content_stack(store, keys, model_path: str | None = None, *, synchronous: bool = False
                  ) -> tuple[ContentSource, CatalogIngestor] | None:
    """The content source and the catalog ingestor feeding its index, or None (logged)
    when no text encoder is installed.

    ``synchronous=True`` (replay) makes the source embed each batch of catalog events
    before the pipeline goes on, and builds the ANN graph in line: the same stream
    gives the same lists every run. The worker instead feeds ``catalog.offer`` from the
    ``items`` topic and embeds in the background.
    """
    encoder = load_default_encoder(model_path)
    if encoder is None:
        return None
    index = AutoIndex(encoder.dim, background=not synchronous)
    catalog = CatalogIngestor(store, keys, encoder, index)
    source = ContentSource(store, keys, index)
    if synchronous:
        source.on_items = catalog.ingest
    return source, catalog


def for_replay(store, keys, settings=None) -> ContentSource | None:
    """The content source for ``streamrec replay`` (see ``content_stack``)."""
    stack = content_stack(store, keys, getattr(settings, "model_path", None), synchronous=True)
    return None if stack is None else stack[0]


__all__ = ["content_stack", "for_replay", "AnnIndex", "AutoIndex", "CatalogIngestor", "ContentSource", "EncoderUnavailable",
           "ExactIndex", "NewItemsSource", "TextEncoder", "VectorIndex", "item_text", "load_default_encoder"]
