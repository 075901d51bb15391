"""What every engine shares, remote or local: the bounded request queue, admission, the job
state table, budgets and the typed request report."""
