"""``kvguard check --fix`` / ``--diff``: libcst codemods that carry out the fix plan.

Imported only when fixing; which findings have a fix is decided by
``kvguard.lint.fixability``, which the engine runs on every check.
"""
