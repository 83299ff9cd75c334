//+------------------------------------------------------------------+
//| PretradeGuardEA.mq5 - example Expert Advisor using the pretrade  |
//| pre-trade check (PretradeBridge.mqh). Compile in MetaEditor with |
//| both files in MQL5/Experts (or the .mqh in MQL5/Include).        |
//+------------------------------------------------------------------+
#property strict
#include "PretradeBridge.mqh"

input string InpBridgeHost   = "127.0.0.1";  // pretrade MT5 bridge host
input int    InpBridgePort   = 5757;         // bridge port (bridge.listen)
input uint   InpTimeoutMs    = 2500;         // no answer in time = blocked; keep above the bridge's decision_timeout_ms
input string InpAccount      = "ACC1";       // account in the pretrade rules
input string InpStrategy     = "";           // strategy in the rules (optional)
input bool   InpDemoOrder    = false;        // send one demo buy on start

CPretradeBridge g_bridge;

// client order id -> kept in the order/deal comment by PretradeOrderSend
string NewClientOrderId()
  {
   return(StringFormat("mt5-%I64d-%I64u-%d",AccountInfoInteger(ACCOUNT_LOGIN),(ulong)TimeCurrent(),MathRand()));
  }

int OnInit()
  {
   g_bridge.Init(InpBridgeHost,InpBridgePort,InpTimeoutMs,InpAccount,InpStrategy);
   EventSetTimer(1);   // OnTimer re-sends execution reports the bridge did not take
   if(InpDemoOrder)
     {
      MqlTradeRequest request={};
      MqlTradeResult  result={};
      request.action=TRADE_ACTION_DEAL;
      request.symbol=_Symbol;
      request.volume=SymbolInfoDouble(_Symbol,SYMBOL_VOLUME_MIN);
      request.type=ORDER_TYPE_BUY;
      request.price=SymbolInfoDouble(_Symbol,SYMBOL_ASK);
      request.deviation=10;
      if(!PretradeOrderSend(g_bridge,request,result,NewClientOrderId()))
         PrintFormat("demo order not sent: retcode %u %s",result.retcode,result.comment);
     }
   return(INIT_SUCCEEDED);
  }

void OnDeinit(const int reason)
  {
   EventKillTimer();
   if(g_bridge.PendingReports()>0)
      PrintFormat("pretrade: %d execution report(s) NOT handed to the bridge (the EA stops): report them again",
                  g_bridge.PendingReports());
  }

// Reports the bridge did not take (no reply: the bridge is down or slow; an error such as
// GATEWAY_UNAVAILABLE or INTERNAL) are sent again, in order, with a backoff; an
// "execution_result" reply (also "queued": the bridge keeps it and delivers it) ends them.
void OnTimer()
  {
   g_bridge.RetryReports();
  }

// Every deal of a checked order goes back to the gateway (fills update exposure; a
// cancelled / rejected / expired order releases its reservation).
void OnTradeTransaction(const MqlTradeTransaction &trans,const MqlTradeRequest &request,const MqlTradeResult &result)
  {
   if(trans.type==TRADE_TRANSACTION_DEAL_ADD && HistoryDealSelect(trans.deal))
     {
      string client_order_id=HistoryDealGetString(trans.deal,DEAL_COMMENT);
      if(StringFind(client_order_id,"mt5-")!=0)
         return;   // not an order this EA checked
      ulong order=trans.order;
      bool done=!OrderSelect(order);   // no longer among the working orders: fully filled
      g_bridge.ReportExecution(client_order_id,done?"fill":"partial_fill",IntegerToString(trans.deal),
                               trans.symbol,trans.volume,trans.price);
     }
   else if(trans.type==TRADE_TRANSACTION_HISTORY_ADD &&
           (trans.order_state==ORDER_STATE_CANCELED || trans.order_state==ORDER_STATE_REJECTED ||
            trans.order_state==ORDER_STATE_EXPIRED) && HistoryOrderSelect(trans.order))
     {
      string client_order_id=HistoryOrderGetString(trans.order,ORDER_COMMENT);
      if(StringFind(client_order_id,"mt5-")!=0)
         return;
      string exec_type=trans.order_state==ORDER_STATE_CANCELED?"cancelled":
                       (trans.order_state==ORDER_STATE_REJECTED?"rejected":"expired");
      g_bridge.ReportExecution(client_order_id,exec_type,"order-"+IntegerToString(trans.order)+"-"+exec_type,
                               trans.symbol,0.0,0.0);
     }
  }
//+------------------------------------------------------------------+
