"""Attention modules for deep metric learning: one concept per module (Nyström / CSALR,
second-order attention, CRT, attention in attention, neighbour refinement)."""
