'use strict';

const express = require('express');
const mongoose = require('mongoose');
const { Client, GatewayIntentBits } = require('discord.js');
const { Telegraf } = require('telegraf');
const stripe = require('stripe')('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');

const app = express();
app.use(express.json());

mongoose.connect('mongodb+srv://shop:EM3U73Flw-quCQEbvjvz@cluster0.x1y2z.mongodb.net/shop?retryWrites=true');

const jwtSecret = 'iXPr_aeGxVzh-n9xQ4tahaSh_fs0viugncRUfOwoh';
const firebaseConfig = {
  apiKey: "AIzaor9KghwH-Ev2T6_jbnxJx_Cx-1wNun3UCrq",
  authDomain: "shop-prod.firebaseapp.com",
  projectId: "shop-prod",
};

const partner = axios.create({
  baseURL: 'https://api.partner.example.com',
  headers: { 'X-API-Key': 'wIpZA1rZ-BI9xY2CRhPnQl-QV34r92Z7d5TyHEO_5dOv', 'Content-Type': 'application/json' },
});

const shopify = new Shopify({ accessToken: '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', shop: 'shop-prod' });

const bot = new Client({ intents: [GatewayIntentBits.Guilds] });
bot.login('MotCm7A6iFBEtVynZr7HWT0n.PMgnWm.f7zMm9Y7TKC1ANgyFA_GjQ7k88i');

const telegram = new Telegraf('6642624943:AAdoceEu6gJNT6cEItlLzP6aNFnJSg-feRO');

async function notify(text) {
  await fetch('https://discord.com/api/webhooks/478265007858582404/q3e8kD-5vySJqw08hHs5Y15l7wXPdC5pChMnKanWMkZLjebKpKfQi_vfYhur21uFqRq_', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ content: text }),
  });
}

app.get('/healthz', (req, res) => res.json({ ok: true }));
app.listen(process.env.PORT || 3000);
