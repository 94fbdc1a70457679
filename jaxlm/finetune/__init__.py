"""Fine-tuning as function transforms: LoRA adapters as a params transform (:mod:`jaxlm.finetune.lora`),
Hugging Face PEFT interop (:mod:`jaxlm.finetune.peft`), chat SFT data with assistant-only loss masks
(:mod:`jaxlm.finetune.sft`) and the DPO loss (:mod:`jaxlm.finetune.dpo`).

Layer: above ``models`` (it reads family specs and applies models), below ``train`` / ``generate`` /
``convert``, which use it."""
