"""The model layer between the networks and their users: checkpoint files and the networks they hold, weight
transfer, pretrained-checkpoint checks, and the downstream network each pretraining is finetuned in."""
