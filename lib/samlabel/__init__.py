"""samlabel: SAM with medical adapters behind MONAI Label."""
