"""Text side of text-aided clustering: WordNet nouns and prompt-averaged text embeddings."""

from .cache import cached_embed_nouns, noun_cache_dir
from .prompts import TAC_TEMPLATES, embed_nouns, prompts_for
from .wordnet import WordNetNotFoundError, default_wordnet_dir, wordnet_nouns

__all__ = [
    "TAC_TEMPLATES",
    "embed_nouns",
    "cached_embed_nouns",
    "noun_cache_dir",
    "prompts_for",
    "wordnet_nouns",
    "default_wordnet_dir",
    "WordNetNotFoundError",
]
