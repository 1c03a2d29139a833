"""The project's SQL migrations, shipped inside the package and applied in order by collage.migrate."""
