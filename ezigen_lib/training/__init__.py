"""Training EZIGen adapters on a frozen SD1.x/SD2.x UNet, with the adapter code the nodes use."""
