"""S3: which keys a row may name (keys), the bucket (bucket), a SKU's downloads (downloads)."""

from collage.storage.bucket import Bucket
from collage.storage.keys import collage_key, key_for_url

__all__ = ["Bucket", "collage_key", "key_for_url"]
