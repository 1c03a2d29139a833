"""Turn every photo of one product SKU into one horizontal JPEG collage."""
