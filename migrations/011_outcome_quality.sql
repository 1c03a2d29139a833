-- The JPEG quality each built collage was encoded at: COLLAGE_QUALITY, or lower where
-- COLLAGE_MAX_BYTES made the build encode it again to fit (docs/imaging.md).
ALTER TABLE collage_outcomes ADD COLUMN IF NOT EXISTS quality smallint;
