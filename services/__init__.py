"""The seed's order saga rebuilt on the toolkit: order, inventory, payment, shipping."""
