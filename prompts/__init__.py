"""Prompt files, installed as the package ``baokan_prompts`` (see pyproject.toml).

The text files here are the prompts; this module only makes setuptools ship them.
"""
