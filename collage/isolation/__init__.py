"""Builds in child processes bounded in CPU and memory: a pool, a handle on a child, the child.

Nothing is imported here: the child (`python -m collage.isolation.child`) loads only what it
needs.
"""
