"""Content understanding: text embeddings of catalog items and the candidates built on them.

- ``encoder``: ``TextEncoder`` (ONNX sentence embeddings) and ``load_default_encoder``;
- ``index``: nearest-neighbour search (exact numpy, HNSW via usearch, automatic switch);
- ``catalog``: ``CatalogIngestor``, ``items`` events into vectors, metadata and the index;
- ``sources``: ``ContentSource``, the ``content`` candidate source and user text taste.

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
from models.content.sources import ContentSource

__all__ = ["AnnIndex", "AutoIndex", "CatalogIngestor", "ContentSource", "EncoderUnavailable",
           "ExactIndex", "TextEncoder", "VectorIndex", "item_text", "load_default_encoder"]
